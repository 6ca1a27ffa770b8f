"""The ablation study as library code: rows and recipe (:mod:`.variants`), the resumable run
(:mod:`.runner`), the report (:mod:`.report`)."""
