"""bench/ingest.py's tables: a row per scenario with its goal's verdict, the ratios to
bare MQTT, paho and the naive bridge, and each scenario's details."""

from __future__ import annotations

from ingest_scenarios import Options, Outcome

# -- output -----------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms" if value >= 10 else f"{value:.1f} ms"


def report(outcomes: list[Outcome], options: Options) -> list[str]:
    header = (f"{'scenario':<28} {'offered':>22} {'committed/s':>26} {'p50':>8} {'p99':>8}"
              f" {'backlog@end':>12}  goal")  # fmt: skip
    lines = [header, "-" * len(header)]
    for o in outcomes:
        s = o.scenario
        offered = f"{o.offered_msgs:,.0f} msg/s"
        if s.per_message > 1:
            offered = f"{o.offered_msgs * s.per_message:,.0f} rd/s ({o.offered_msgs:,.0f} msg)"
        committed = f"{o.committed_readings_s:,.0f} readings/s"
        if s.per_message > 1:
            committed += f" ({o.committed_msgs_s:,.0f} msg)"
        lines.append(
            f"{s.title:<28} {offered:>22} {committed:>26} {_ms(o.p50_ms):>8} {_ms(o.p99_ms):>8}"
            f" {o.backlog_msgs:>12,}  {goal_verdict(o)}"
        )
    lines.extend(ratio_lines(outcomes))
    lines.append("")
    lines.append("details:")
    for o in outcomes:
        cpu = ", ".join(f"{k} {v:.0f}%" for k, v in o.cpu.items())
        lines.append(f"  {o.scenario.title}: published {o.sent:,} msgs; cpu (% of a core): {cpu}")
        if o.threads:
            lines.append("    threads: " + ", ".join(f"{k} {v:.0f}%" for k, v in o.threads.items()))
        extra = detail_parts(o, options)
        if extra:
            lines.append("    " + "; ".join(extra))
    return lines


def detail_parts(o: Outcome, options: Options) -> list[str]:
    """A scenario's details beyond its row: the drain, its batches, latency's tail and legs,
    what was refused or rejected."""
    extra = []
    if o.drain_readings_s is not None:
        extra.append(f"drain after publishers stopped {o.drain_readings_s:,.0f} readings/s")
    if o.scenario.consumer in {"ingest", "floor"}:
        extra.append("drained" if o.drained else f"NOT drained within {options.drain:.0f} s")
        if o.batches_s > 0:
            extra.append(f"{o.batches_s:,.0f} batches/s of"
                         f" {o.committed_msgs_s / o.batches_s:,.0f} msgs")  # fmt: skip
        if o.p999_ms is not None:
            extra.append(f"p99.9 {_ms(o.p999_ms)}, max {_ms(o.max_ms)} over {o.latency_n:,} msgs")
        if o.to_broker_ms is not None and o.in_platform_ms is not None:
            extra.append(
                f"p50/p99 sent_at->broker stamp {_ms(o.to_broker_ms[0])}/"
                f"{_ms(o.to_broker_ms[1])}, broker stamp->commit {_ms(o.in_platform_ms[0])}/"
                f"{_ms(o.in_platform_ms[1])}"
            )
        if o.rejected:
            extra.append(f"{o.rejected} readings REJECTED")
    if o.refused:
        extra.append(f"{o.refused} publishes refused/unacked")
    return extra


def ratio_lines(outcomes: list[Outcome]) -> list[str]:
    """Ingest's single-reading capacity beside bare MQTT (the goal) and the naive bridge."""
    lines: list[str] = []
    naive = next((o for o in outcomes if o.scenario.consumer == "naive"), None)
    single = next((o for o in outcomes if o.scenario.key == "single-max"), None)
    bare = next((o for o in outcomes if o.scenario.consumer == "bare"), None)
    if bare is not None and single is not None:
        ratio = single.committed_msgs_s / max(bare.committed_msgs_s, 1e-9)
        verdict = _verdict(single, ratio)
        lines.append(f"ingest / bare MQTT, same publishers and broker (1 rd/msg):"
                     f" {_at_least(single)}{ratio:.2f}x   (goal >= 0.7: {verdict})")  # fmt: skip
        # publishers that could not send at the rate asked are the ceiling themselves
        if kept_up(bare) and bare.offered_msgs >= 0.98 * bare.scenario.rate:
            lines.append("  bare MQTT kept up with its offer: its capacity is higher, so this"
                         " ratio is an upper bound (raise --bare-rate)")  # fmt: skip
    paho = next((o for o in outcomes if o.scenario.consumer == "paho"), None)
    if bare is not None and paho is not None:
        ratio = paho.committed_msgs_s / max(bare.committed_msgs_s, 1e-9)
        lines.append(f"paho receive+ack only / bare MQTT: {ratio:.2f}x   (the ceiling of an"
                     " ingest on the MQTT client, whatever it does with the messages)")  # fmt: skip
    if paho is not None and single is not None:
        ratio = single.committed_msgs_s / max(paho.committed_msgs_s, 1e-9)
        lines.append(f"ingest / paho receive+ack only: {ratio:.2f}x")
    lines.extend(floor_lines(outcomes, bare))
    if naive is not None and single is not None:
        ratio = single.committed_readings_s / max(naive.committed_readings_s, 1e-9)
        lines.append(f"ingest / naive bridge, same offered load (1 rd/msg): {ratio:.1f}x"
                     "   (a reference line, not a goal)")  # fmt: skip
    return lines


def floor_lines(outcomes: list[Outcome], bare: Outcome | None) -> list[str]:
    """The floor (the least an ingest must do) beside bare MQTT and beside ingest: a goal the
    floor misses in the same run is beyond this machine for any ingest on this client and
    schema; the gap between the floor and ingest is what ingest's own work costs."""
    by_key = {o.scenario.key: o for o in outcomes}
    floor = by_key.get("floor-single-max")
    lines: list[str] = []
    if floor is not None and bare is not None:
        ratio = floor.committed_msgs_s / max(bare.committed_msgs_s, 1e-9)
        if ratio >= 0.7:
            verdict = "within reach"
        elif kept_up(floor):
            verdict = "not known: it kept up with a load below the goal's (raise --single-max-rate)"
        else:
            verdict = "beyond this machine for any ingest on this client and schema"
        lines.append(f"floor / bare MQTT (1 rd/msg): {_at_least(floor)}{ratio:.3f}x"
                     f"   (the 0.7 goal: {verdict})")  # fmt: skip
    keys = by_key.get("floor-keys-single-max")
    if keys is not None and bare is not None:
        ratio = keys.committed_msgs_s / max(bare.committed_msgs_s, 1e-9)
        lines.append(f"floor without the roll-up triggers / bare MQTT (1 rd/msg):"
                     f" {_at_least(keys)}{ratio:.3f}x")  # fmt: skip
    for ingest_key, floor_key in (("single-max", "floor-single-max"),
                                  ("batch-max", "floor-batch-max")):  # fmt: skip
        mine, least = by_key.get(ingest_key), by_key.get(floor_key)
        if mine is not None and least is not None:
            ratio = mine.committed_readings_s / max(least.committed_readings_s, 1e-9)
            lines.append(f"ingest / floor, {mine.scenario.per_message} rd/msg: {ratio:.2f}x")
    return lines


def _at_least(o: Outcome) -> str:
    """ ">= " before a capacity ratio of a consumer that kept up with all it was offered: its
    capacity is higher, and the ratio says only what it was offered."""
    return ">= " if kept_up(o) else ""


def _verdict(o: Outcome, ratio: float) -> str:
    if ratio >= 0.7:
        return "met"
    return "not known: it kept up with less (raise --single-max-rate)" if kept_up(o) else "NOT met"


def kept_up(o: Outcome) -> bool:
    """Committed (or delivered) at least 98 % of what was offered (slack for the publishers'
    pacing), with at most a second's worth of messages left in the broker at the end."""
    return o.backlog_msgs <= o.offered_msgs and o.committed_msgs_s >= 0.98 * o.offered_msgs


def goal_verdict(o: Outcome) -> str:
    """Sustained: kept up (`kept_up`), at the goal's readings/s. Capacity: what was
    committed while more was offered (unless it kept up, the backlog grows: not
    sustainable). Latency: p99 under the goal, having kept up (else the percentiles would
    not be of that rate)."""
    s = o.scenario
    backlog_ok = kept_up(o)
    if s.check == "sustained":
        met = o.committed_readings_s >= 0.98 * s.goal and backlog_ok
        return f">= {s.goal:,.0f} rd/s sustained: {'met' if met else 'NOT met'}"
    if s.check == "capacity":
        factor = o.committed_readings_s / s.goal
        if backlog_ok:  # it kept up: the capacity is higher still
            return f"kept up: capacity >= {factor:.2f}x the goal"
        return f"backlog grows: capacity {factor:.2f}x the goal"
    if s.check == "info":
        return "the goal is the ratio to bare MQTT (below)"
    if s.check == "latency":
        met = o.p99_ms is not None and o.p99_ms < s.goal and backlog_ok
        return f"p99 < {s.goal:.0f} ms: {'met' if met else 'NOT met'}"
    return "baseline"
