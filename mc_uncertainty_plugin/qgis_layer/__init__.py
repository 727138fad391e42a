"""The QGIS layer of the plugin: Processing provider, algorithms, parameters and styling.

Not named ``processing``: that would shadow QGIS's own ``processing`` package. Importing it never imports torch;
the core is imported inside ``processAlgorithm`` once torch is found.
"""
