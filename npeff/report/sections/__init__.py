"""npeff.report.sections: each report section rendered as HTML from its stage's data.

- ``compare_coar.compare_coar_section(result, coar_html)``: the NPEFF-vs-COAR table.
"""
