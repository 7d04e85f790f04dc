"""Pathfinder images (Linsley et al. 2018, as LRA uses them): parameters, generator, difficulty probe.

Three modules, each depending only on the ones before it:

* :mod:`~lra.pathfinder.params` -- the public surface: :class:`PathfinderParams`, the LRA
  release's sets per size and difficulty (:func:`params_for`, ``DIFFICULTIES``),
  :func:`params_dict` and ``GENERATOR_VERSION`` (re-exported here);
* :mod:`~lra.pathfinder.generate` -- the seeded, vectorised generator (one algorithm, kept in
  one module): ``generate(n, seed, size, params)`` -> images and labels;
* :mod:`~lra.pathfinder.difficulty` -- how hard a set of images is: flood fill, simple
  features, blob and grey-level statistics (for generated images, the release's or a cache).

:mod:`lra.tasks.pathfinder` turns the images into the Pathfinder and Path-X tasks; ``lra-data
show task=pathfinder`` runs the difficulty probe. The package needs NumPy, not torch:
:func:`~lra.pathfinder.generate.generate` spawns worker processes, and those import it without
loading torch (``test_generates_without_torch`` checks both). Only ``workers=None`` asks
:func:`lra.devices.cpus_available`, in the parent process, for the CPUs to use.
"""
from .params import DIFFICULTIES, GENERATOR_VERSION, RESAMPLE_FILTERS, PathfinderParams, params_dict, params_for

__all__ = ["PathfinderParams", "params_for", "params_dict", "DIFFICULTIES", "GENERATOR_VERSION", "RESAMPLE_FILTERS"]
