"""The app's pages and the frame around them: the run page (?run=NAME), the overview, compare and new run."""

from __future__ import annotations

import streamlit as st

TITLE = "nnobs"


def pages() -> dict[str, st.Page]:
    """The pages by name; the run page is the default, at the app's root, so ?run=NAME opens a run as always."""
    from nnobs.compare_page import compare_page
    from nnobs.new_run_page import new_run_page
    from nnobs.overview_page import overview_page
    from nnobs.page import run_page

    return {
        "run": st.Page(run_page, title="Run", icon=":material/monitoring:", url_path="run", default=True),
        "overview": st.Page(overview_page, title="Overview", icon=":material/table_rows:", url_path="overview"),
        "compare": st.Page(compare_page, title="Compare", icon=":material/compare_arrows:", url_path="compare"),
        "new": st.Page(new_run_page, title="New run", icon=":material/add_circle:", url_path="new"),
    }


def main() -> None:
    """The entry point of `streamlit run app.py`: the page style, the navigation, then the page asked for."""
    from nnobs.page import PAGE_STYLE

    st.set_page_config(page_title=TITLE, layout="wide")
    st.html(PAGE_STYLE)
    page = st.navigation(list(pages().values()), position="top")
    if page.url_path:  # not the run page, the default, at the root
        st.session_state.pop("pressed", None)  # a run's control pressed just before leaving it: not done on return
    page.run()
