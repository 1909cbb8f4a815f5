"""The board farm: ``qverify farm run | check | schema | report``.

:mod:`.inventory` reads farm.toml, :mod:`.runner` runs every (board, model) pair (boards
named by labgrid place through :mod:`.labgrid_places`), :mod:`.outcomes` holds what a run
found, :mod:`.history` records runs and finds regressions, :mod:`.reports` and :mod:`.trend`
write them, and :mod:`.cli` is the ``qverify farm`` sub-app.
"""
