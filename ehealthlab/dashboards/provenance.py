"""Whether a dashboard shows simulated data, said at its top from the data themselves: the
demo and the rehearsals run on simulated organisations (`organisations.simulated`), and a
reader must never take their readings for patients' (issue 12)."""

from __future__ import annotations

from grafanalib.core import Stat

from ehealthlab.dashboards.panels import datasource, sql
from ehealthlab.dashboards.roles import Kind

SIMULATED = "SIMULATED DATA"
REAL = "real data"
MIXED = "real and SIMULATED data"

#: the organisation the role speaks for (provider and start-up views)
OWN_SQL = f"""
SELECT CASE WHEN simulated THEN '{SIMULATED}' ELSE '{REAL}' END AS "data"
FROM organisation
"""  # noqa: S608 (module constants, no input)
#: every provider and start-up (the lab's view)
ALL_SQL = f"""
SELECT CASE WHEN bool_and(simulated) THEN '{SIMULATED}'
            WHEN bool_or(simulated) THEN '{MIXED}'
            ELSE '{REAL}' END AS "data"
FROM organisations
WHERE kind IN ('provider', 'startup')
"""  # noqa: S608 (module constants, no input)


_COLOURS = {
    SIMULATED: {"color": "red", "index": 0},
    MIXED: {"color": "orange", "index": 1},
    REAL: {"color": "green", "index": 2},
}


def provenance_panel(kind: Kind) -> Stat:
    """A one-value banner: red when any of the data shown is simulated."""
    return Stat(
        title="Data",
        description=(
            "Whether the organisations behind this dashboard are simulated "
            "(organisations.simulated): the demo's and rehearsals' readings come from the "
            "simulator, not from patients."
        ),
        dataSource=datasource(kind),
        targets=[sql(kind, ALL_SQL if kind == "lab" else OWN_SQL)],
        reduceCalc="lastNotNull",
        fields="/^data$/",
        colorMode="background",
        textMode="value",
        mappings=[{"type": "value", "options": _COLOURS}],
    )
