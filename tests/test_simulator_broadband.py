"""The simulator's broadband, pure: inner areas get worse broadband than centres, outage
schedules are well formed and match their profile over long runs, and a scenario sets each
municipality's."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from simulator_fixtures import reference

from ehealthlab.simulators.broadband import (
    DEFAULT_CLASS_PROFILES,
    SNAI_CLASSES,
    ConnectivityProfile,
    Outage,
    connectivity_profile,
    outage_schedule,
)
from ehealthlab.simulators.municipality_broadband import municipality_profile, outage_schedules
from ehealthlab.simulators.patients import simulated_patients
from ehealthlab.simulators.scenario import EXAMPLE_SCENARIO, load_scenario

# -- broadband ---------------------------------------------------------------------------------


def test_inner_areas_get_worse_broadband_than_centres():
    profiles = [DEFAULT_CLASS_PROFILES[c] for c in SNAI_CLASSES]
    for better, worse in itertools.pairwise(profiles):
        assert worse.outages_per_week >= better.outages_per_week
        assert worse.outage_median_minutes >= better.outage_median_minutes
        assert worse.latency_median_ms >= better.latency_median_ms
        assert worse.session_drop_probability >= better.session_drop_probability
        assert worse.expected_availability < better.expected_availability
    municipalities = reference()
    balme, torino = municipalities["001019"], municipalities["001272"]
    inner = connectivity_profile(balme.snai_class, balme.travel_time_minutes)
    centre = connectivity_profile(torino.snai_class, torino.travel_time_minutes)
    assert inner.expected_availability < 0.99
    assert centre.expected_availability > 0.999
    # within a class, farther from the pole is a little worse, within bounds
    near, far = connectivity_profile("E", 42.2), connectivity_profile("E", 64.0)
    assert (
        near.outages_per_week
        < far.outages_per_week
        <= 1.5 * DEFAULT_CLASS_PROFILES["E"].outages_per_week
    )


def test_a_schedule_matches_its_profile_over_a_long_run():
    profile = DEFAULT_CLASS_PROFILES["E"]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    schedule = outage_schedule(profile, 42, start, start + timedelta(days=730))
    weeks = 730 / 7
    assert (
        abs(len(schedule.outages) / weeks - profile.outages_per_week)
        < 0.15 * profile.outages_per_week
    )
    assert abs(schedule.availability - profile.expected_availability) < 0.005
    assert (
        outage_schedule(profile, 42, start, start + timedelta(days=730)).outages == schedule.outages
    )
    assert (
        outage_schedule(profile, 43, start, start + timedelta(days=730)).outages != schedule.outages
    )
    latencies = [profile.latency_seconds(np.random.default_rng(i)) for i in range(2000)]
    assert abs(np.median(latencies) - profile.latency_median_ms / 1000) < 0.01


profiles_strategy = st.builds(
    ConnectivityProfile,
    outages_per_week=st.floats(0, 50),
    outage_median_minutes=st.floats(0.1, 600),
    outage_sigma=st.floats(0, 2),
    outage_max_hours=st.floats(0.01, 72),
    latency_median_ms=st.floats(0, 1000),
    latency_sigma=st.floats(0, 2),
    session_drop_probability=st.floats(0, 1),
)


@settings(max_examples=100, deadline=None)
@given(
    profile=profiles_strategy,
    seed=st.integers(0, 2**63),
    start=st.datetimes(datetime(2025, 1, 1), datetime(2028, 1, 1), timezones=st.just(UTC)),
    days=st.floats(0, 60),
    probes=st.lists(st.floats(-0.1, 1.1), max_size=30),
    forced=st.lists(st.tuples(st.floats(-0.2, 1.2), st.floats(0, 0.3)), max_size=3),
)
def test_outage_schedules_are_well_formed(  # noqa: PLR0917 - hypothesis
    profile, seed, start, days, probes, forced
):
    end = start + timedelta(days=days)
    span = end - start
    extra = [Outage(start + span * a, start + span * a + span * b) for a, b in forced]
    schedule = outage_schedule(profile, seed, start, end).with_outages(extra)
    previous_end = None
    for outage in schedule.outages:
        assert start <= outage.start < outage.end <= end
        assert previous_end is None or previous_end < outage.start  # sorted, disjoint, merged
        assert outage.duration <= timedelta(hours=profile.outage_max_hours) or extra
        previous_end = outage.end
    for fraction in probes:
        t = start + span * fraction
        down = [o for o in schedule.outages if o.start <= t < o.end]
        assert schedule.is_up(t) == (not down)
        up_at = schedule.next_up(t)
        assert schedule.is_up(up_at) and up_at >= t
        assert up_at == (down[0].end if down else t)
        following = schedule.next_outage(t)
        later = [o for o in schedule.outages if o.end > t]
        assert following == (later[0] if later else None)
    assert 0.0 <= schedule.availability <= 1.0


def test_the_scenario_sets_each_municipality_s_broadband():
    scenario = load_scenario(EXAMPLE_SCENARIO, reference())
    schedules = outage_schedules(scenario)
    patients = simulated_patients(scenario)
    assert set(schedules) == {p.municipality for p in patients}
    ala = schedules["001003"]  # the example forces a 10-hour outage there
    snowstorm = datetime(2026, 2, 14, 5, 0, tzinfo=UTC)
    assert not ala.is_up(snowstorm + timedelta(hours=5))
    assert ala.next_up(snowstorm) >= snowstorm + timedelta(hours=10)
    assert municipality_profile(scenario, "001019").outages_per_week > 2.0  # class F override
    assert schedules["001272"].availability > schedules["001003"].availability
