"""Reliability campaigns: seeded fault schedules run against real dockd processes.

``python -m campaigns.run --size ci|large [--campaign NAME] [--seed N]``. Each
campaign builds throwaway stations and cameras, injects its faults, lets dockd
finish, and hands the result to the one ``Invariants`` checker.
"""
