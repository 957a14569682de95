"""The manifest of a generation job: the commit marker a downstream pipeline trusts.

It is written last, after every shard it lists is complete in storage, so its presence means the job's data is
whole. Each shard entry carries its sample count, byte size and sha256 so readers can check what they stream.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from shared.formats import check_format
from shared.layout import manifest_key, shard_object_key
from shared.storage import Storage

# Format 2 added ``teacher``; format 1 manifests (no teacher) still read. Manifests were versioned from the start.
MANIFEST_FORMAT = 2
OLDEST_MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class ShardEntry:
    name: str
    count: int
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    job_id: str
    model_id: str
    shards: list[ShardEntry]
    class_counts: dict[str, int]  # class index as a string (JSON keys are strings) -> images
    class_names: list[str]
    image_size: int
    channels: int
    spec: dict[str, Any]
    created_at: str
    # the teacher whose class probabilities each sample's JSON carries as "probs" (worker/teacher.py), or None
    teacher: dict[str, Any] | None = None
    format: int = MANIFEST_FORMAT
    total: int = field(default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "total", sum(shard.count for shard in self.shards))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, what: str = "the manifest") -> Manifest:
        data = json.loads(text)
        check_format(what, data.get("format"), MANIFEST_FORMAT, OLDEST_MANIFEST_FORMAT)
        data["shards"] = [ShardEntry(**entry) for entry in data["shards"]]
        data.pop("total", None)
        return cls(**data)

    @classmethod
    def load(cls, storage: Storage, job_id: str) -> Manifest:
        return cls.from_json(storage.get_text(manifest_key(job_id)), f"the manifest of job {job_id}")

    @property
    def target_rule(self) -> str:
        """How each sample's ``target`` was chosen (shared/specs.py TargetRule); jobs of older versions carried the
        teacher's probabilities only, and a job without a teacher trains on its labels."""
        if self.teacher is None:
            return "hard"
        return str(self.spec.get("targets", "teacher"))

    def shard_key(self, entry: ShardEntry) -> str:
        return shard_object_key(self.job_id, entry.name)
