"""Show the parity figures: every `max_abs_diff ...` property a test records, in the terminal summary."""

from __future__ import annotations


def pytest_terminal_summary(terminalreporter) -> None:
    rows = [(report.nodeid.split("::")[-1], key.removeprefix("max_abs_diff "), value)
            for outcome in ("passed", "failed")
            for report in terminalreporter.stats.get(outcome, [])
            for key, value in getattr(report, "user_properties", ())
            if str(key).startswith("max_abs_diff")]
    if rows:
        terminalreporter.section("s3prl parity: max abs differences")
        for test, what, value in rows:
            terminalreporter.write_line(f"{value:>10}  {what}  ({test})")
