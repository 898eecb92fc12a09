"""What the page shows, as plain functions: chart frames, Vega-Lite specs, wording, palette, overview rows."""
