"""The web portal (issue 12, item 2; docs/portal.md): start-ups, providers and CMTo use the
LAB from a browser, through the same route functions as the JSON API."""
