"""schoolgate.review: the annual filtering and monitoring review pack for governors.

    facts   what the year's review shows, gathered from the policy, config and database
    render  the pack as HTML from Jinja templates, charts as server-side SVG
    pdf     the HTML printed to PDF by Chromium
    cli     `schoolgate review-pack --config C --year 2026-27 --out review.pdf`
"""
