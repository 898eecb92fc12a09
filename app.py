"""nnobs page: `streamlit run app.py`, then open ?run=NAME for a run other than the default."""

from nnobs.page import main

main()
