"""Checks for the cluster configs in `clusters/`: Ray launcher YAMLs, KubeRay manifests, Serve configs.

    from lbdist.clusters import validate_file
    problems = validate_file("clusters/aws-h100.yaml")   # [] when valid

The command line is `lbdist validate-cluster FILE [FILE ...]`. Importing this package imports neither Ray
nor Serve; they load when a file is checked.
"""
from .validate import detect_kind, require_valid, validate_documents, validate_file, validate_files

__all__ = ["detect_kind", "require_valid", "validate_documents", "validate_file", "validate_files"]
