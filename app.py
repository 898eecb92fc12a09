"""nnobs page: `streamlit run app.py`; ?run=NAME opens a run other than the default, /overview lists every run."""

from nnobs.app.frame import main

main()
