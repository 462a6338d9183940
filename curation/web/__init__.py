"""The curator web page (``curation web``): a thin room over ``curation.curate``.

``app`` builds the aiohttp application and its routes, ``auth`` keeps sessions,
sign-in and CSRF, ``view`` the configuration and templates every handler shares,
``pages`` and ``actions`` are the handlers (parse, call one function, render a
template), ``chat`` turns a recorded row into what the row page shows (pure). The database work runs in ``curation.db.web``, on a connection of
each session's own, opened as the login that signed in.
"""
