"""Evaluation of an uncertainty map against reference labels: metrics, streaming over the rasters, reports.

In the order the data flows:

- :mod:`.config`: :class:`~.config.EvaluationConfig`, what to evaluate and how finely;
- :mod:`.rasters`: the inputs opened, checked to share one grid (REFERENCE resampled when it does not), read by
  blocks of rows;
- :mod:`.accumulation`: the counts kept while streaming (confusion matrix, histograms, calibration bins, patches);
- :mod:`.metrics`: every metric as a function of those counts (pure numpy);
- :mod:`.evaluation`: :func:`~.evaluation.evaluate_uncertainty`, the two passes that tie the above together;
- :mod:`.result`: :class:`~.result.EvaluationResult`, the numbers and curves returned, and their JSON;
- :mod:`.figures`, :mod:`.report`: the matplotlib figures and the HTML report;
- :mod:`.outputs`: the HTML, PNG and JSON files, written safely (:func:`~.outputs.evaluate_to_files`).
"""
