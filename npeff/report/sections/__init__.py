"""npeff.report.sections: each report section rendered as HTML from its stage's data.

- ``compare_coar.compare_coar_section(result, coar_html)``: the NPEFF-vs-COAR table.
- ``shortcut.shortcut_section(summary)``: the shortcut-fix methods × accuracies and edits.
"""
