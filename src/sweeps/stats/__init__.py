"""Pure statistics: tests, intervals, corrections and sequential boundaries.

The floor below everything else: modules here import numpy and scipy, never anything of sweeps
outside this package, so each function can be checked by hand, against scipy and by simulation.
"""
