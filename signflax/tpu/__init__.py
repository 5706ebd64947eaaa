"""TPU pods from any host: compile the train step for a TPU topology with libtpu's
compile-only devices, check that it fits in HBM, and estimate its step time.

``signflax compile`` (``signflax.tpu.compile``) is the command; ``plan`` holds the
compile, the roofline estimate and the mesh search; ``chips`` the chip table;
``hlo`` reads the compiled program's collectives.
"""
