"""Artifacts: the one contract between stages (see ARCHITECTURE.md).

``manifest`` reads and verifies them; ``writer`` writes them atomically and decides whether a
stage's output is up to date or would replace something different.
"""

from lmkit.artifacts.manifest import (
                                      KINDS,
                                      MANIFEST,
                                      Artifact,
                                      artifact_id,
                                      describe_file,
                                      describe_parent,
                                      digest_json,
                                      lineage,
                                      load,
                                      make_recipe,
                                      manifest_checksum,
                                      read_manifest,
                                      register_kind,
                                      sha256_file,
                                      verify_files,
                                      verify_tree,
)
from lmkit.artifacts.writer import ArtifactWriter, seal, write_json_durable
from lmkit.errors import ArtifactError

__all__ = ["KINDS", "MANIFEST", "Artifact", "ArtifactError", "ArtifactWriter", "artifact_id", "describe_file",
           "describe_parent", "digest_json", "lineage", "load", "make_recipe", "manifest_checksum", "read_manifest",
           "register_kind", "seal", "sha256_file", "verify_files", "verify_tree", "write_json_durable"]
