"""Progress records of the stages that are not the GAN's loop: the meter that makes them, how they travel and read."""

from __future__ import annotations

from producer.follow import status_line
from shared.progress import StageMeter, StageProgress, progress_from_dict, progress_line, progress_to_dict, shifted


def test_the_meter_reports_the_first_and_last_step_and_at_most_one_between_per_interval() -> None:
    reports: list[StageProgress] = []
    meter = StageMeter("training the reference classifier", 500, reports.append, interval_s=3600)
    for step in range(1, 501):
        meter(step)
    assert [report.done for report in reports] == [1, 500]
    assert all(report.total == 500 and report.stage == "training the reference classifier" for report in reports)
    assert reports[0].per_s > 0 and reports[0].eta_s > 0 and reports[-1].eta_s == 0


def test_an_every_step_meter_has_a_rate_that_gives_its_eta() -> None:
    reports: list[StageProgress] = []
    meter = StageMeter("arms", 10, reports.append, interval_s=0)
    for step in range(1, 11):
        meter(step)
    assert [report.done for report in reports] == list(range(1, 11))
    middle = reports[4]
    assert abs(middle.eta_s - 5 / middle.per_s) < 1e-6 * max(middle.eta_s, 1)


def test_shifted_counts_a_later_part_of_a_stage_from_where_the_earlier_part_ended() -> None:
    seen: list[int] = []
    second_member = shifted(seen.append, 300)
    second_member(1)
    second_member(300)
    assert seen == [301, 600]


def test_a_stage_record_travels_as_json_and_reads_back_and_so_does_an_older_workers() -> None:
    record = StageProgress("the study's classifiers (5 settings x 5 seeds)", 1200, 25_000, per_s=40.0, eta_s=595.0)
    assert progress_from_dict(progress_to_dict(record)) == record
    older = progress_from_dict({"kind": "evaluate", "stage": "metrics", "done": None, "total": None})
    assert older == StageProgress("metrics")


def test_the_watch_line_of_a_stage_has_a_bar_its_count_rate_and_eta() -> None:
    record = StageProgress("training the teacher (3 classifiers)", 450, 1800, per_s=90.0, eta_s=15.0)
    line = status_line({"state": "PROGRESS", "progress": progress_to_dict(record)})
    assert line == "PROGRESS [######..................] training the teacher (3 classifiers) 450/1800 steps 90 steps/s ETA 0m15s"
    assert progress_line("PROGRESS", StageProgress("metrics: FID, KID, precision, recall")) == \
        "PROGRESS metrics: FID, KID, precision, recall"
