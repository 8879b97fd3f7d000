"""Face datasets: UTKFace / class-folder listing, cached indexing, splits, demo data."""

from facediff.data.audit import AuditReport, audit_dataset, format_report
from facediff.data.balanced_sampler import BalancedSampler
from facediff.data.datamodule import FaceDataModule
from facediff.data.dataset import FaceDataset
from facediff.data.demo import DEMO_CLASSES, draw_demo_face, write_demo_dataset
from facediff.data.duplicates import resolve_duplicates
from facediff.data.folder import scan_folder
from facediff.data.index import ImageIndex, build_index
from facediff.data.sources import Listing, list_labelled_files
from facediff.data.splits import split_indices
from facediff.data.transforms import Augment, build_eval_transform, build_train_transform
from facediff.data.utkface import ClassSelector, UTKRecord, parse_utkface_name, scan_utkface

__all__ = [
    "DEMO_CLASSES",
    "AuditReport",
    "Augment",
    "BalancedSampler",
    "ClassSelector",
    "FaceDataModule",
    "FaceDataset",
    "ImageIndex",
    "Listing",
    "UTKRecord",
    "audit_dataset",
    "build_eval_transform",
    "build_index",
    "build_train_transform",
    "draw_demo_face",
    "format_report",
    "list_labelled_files",
    "parse_utkface_name",
    "resolve_duplicates",
    "scan_folder",
    "scan_utkface",
    "split_indices",
    "write_demo_dataset",
]
