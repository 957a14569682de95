"""Every Redis key and job-record field of the job system, named once (as rq's ``Job.key_for``).

The records (:mod:`shared.records`), liveness (:mod:`shared.liveness`) and the job's state (:mod:`shared.lifecycle`)
all live under these keys; the Lua scripts that fence their writes name them through here too.
"""

from __future__ import annotations

from enum import Enum


class JobField(str, Enum):
    """The fields of a job's record (one Redis hash per job, see :meth:`Keys.job`)."""

    KIND = "kind"  # train, generate or evaluate
    SPEC = "spec"  # the validated spec, as JSON
    SUBMITTED_AT = "submitted_at"
    CANCEL_REQUESTED = "cancel_requested"
    # The job's final state, set once, in the same step as the state record; later tasks see it and stop.
    OUTCOME = "outcome"
    # What a finished job leaves (a model card, a manifest), fixed once by the attempt that finished it: whoever
    # writes the job's stable objects writes these bytes, so a late or second writer writes the same ones.
    COMMIT = "commit"
    PROGRESS_STEP = "progress_step"  # the furthest training step reported: progress never goes backwards
    CHECKPOINT = "checkpoint"  # the storage key of a training job's latest checkpoint, moved by its lease holder only
    TEACHER = "teacher"  # the storage key of a training job's teacher, set by its lease holder
    STARTED_AT = "started_at"  # when a generation job's planner first ran (its images/s is measured from here)
    DISPATCHED = "dispatched"  # how many shard tasks the planner has sent, so a rerun planner goes on from there
    FINALIZE_SENT = "finalize_sent"  # the finaliser was dispatched (once)
    IMAGES_DONE = "images_done"  # images in the shard ledger, kept beside it so progress is one read

    def __str__(self) -> str:
        return self.value


def epoch_field(part: str) -> str:
    """The job-record field that counts the attempts on PART ("train", "shard:8"): each lease taken adds one."""
    return f"epoch:{part}"


class Keys:
    """Every Redis key of the job system, built in one place."""

    PREFIX = "augment"

    @staticmethod
    def job(job_id: str) -> str:
        """The hash of a job's record (fields: :class:`JobField`)."""
        return f"{Keys.PREFIX}:job:{job_id}"

    @staticmethod
    def jobs() -> str:
        """The sorted set of every job id, scored by submission time."""
        return f"{Keys.PREFIX}:jobs"

    @staticmethod
    def active() -> str:
        """The sorted set of the jobs without a final state, scored by submission time: what reconciliation reads."""
        return f"{Keys.PREFIX}:active"

    @staticmethod
    def shards(job_id: str) -> str:
        """The shard ledger of a generation job: shard index -> its record (JSON)."""
        return f"{Keys.PREFIX}:job:{job_id}:shards"

    @staticmethod
    def history(job_id: str) -> str:
        """A training job's progress records (JSON), in the order they came: the dashboard's curves."""
        return f"{Keys.PREFIX}:job:{job_id}:history"

    @staticmethod
    def lease(name: str) -> str:
        """A lease: its value is the holder's fencing token (owner#epoch), its expiry the lapse time."""
        return f"{Keys.PREFIX}:lease:{name}"

    @staticmethod
    def beats(job_id: str) -> str:
        """The last heartbeat of each running part of a job: part -> {owner, at, every_s} (JSON)."""
        return f"{Keys.PREFIX}:job:{job_id}:beats"

    @staticmethod
    def reconcile_lock() -> str:
        """Held by the one worker that reconciles the fleet's jobs in a given period."""
        return f"{Keys.PREFIX}:reconcile"

    @staticmethod
    def suspects() -> str:
        """Parts reconciliation found without message or lease once: part key -> when (a second look resends them)."""
        return f"{Keys.PREFIX}:reconcile:suspects"
