"""The Processing side: the provider ``mc_uncertainty``, its algorithms and their parameters.

Not named ``processing``: that would shadow QGIS's own ``processing`` package. Importing it never imports torch;
the core is imported inside ``processAlgorithm`` once torch is found.
"""
