"""Reading the SIP service's call records back: one per attempt, damaged lines left out,
and the per-day statistics `pbxagent calls stats` prints."""

from __future__ import annotations

import datetime

from pbxagent.calls import records

ANSWERED = ("NOTICE: <script>: pbx-cdr call=1-21646@192.168.50.20 from=801 to=802 class=internal trunk=- "
            "src=192.168.50.20 start=1796401337 code=200 answer=1796401338 end=1796401343")
BUSY = ("pbx-cdr call=3-21646@192.168.50.20 from=801 to=802 class=internal trunk=- src=192.168.50.20 "
        "start=1796401338 code=486 answer=- end=1796401338")


def test_a_record_line_reads_back_field_by_field() -> None:
    cdr = records.parse(ANSWERED)
    assert cdr == records.Cdr("1-21646@192.168.50.20", "801", "802", "internal", "", "192.168.50.20",
                              1796401337, 200, 1796401338, 1796401343)
    assert cdr.duration == 5
    busy = records.parse(BUSY)
    assert busy is not None and busy.code == 486 and busy.answer is None and busy.duration == 0


def test_other_lines_and_damaged_records_are_not_records() -> None:
    assert records.parse("INFO: <script>: pbx-auth-challenge src=192.168.50.21 proto=udp") is None
    assert records.parse(BUSY.replace(" code=486", "")) is None  # a field missing
    assert records.parse(BUSY.replace("start=1796401338", "start=soon")) is None


def test_stats_count_attempts_answers_and_talk_time_per_day_extension_and_class() -> None:
    cdrs = [records.parse(line) for line in (ANSWERED, BUSY, ANSWERED.replace("from=801", "from=803"))]
    table = records.stats([c for c in cdrs if c is not None], datetime.UTC)
    assert table == {("2026-12-04", "801", "internal"): records.Tally(2, 1, 5),
                     ("2026-12-04", "803", "internal"): records.Tally(1, 1, 5)}
