"""The frame of `streamlit run app.py`: page style, sign-in and navigation around the run page (?run=NAME), the
overview, compare and new run pages, which never import each other."""

from __future__ import annotations

import streamlit as st

from nnobs.app import run_controls, widgets
from nnobs.app.compare_page import compare_page
from nnobs.app.new_run_page import new_run_page
from nnobs.app.overview_page import overview_page
from nnobs.app.run_page import run_page

TITLE = "nnobs"
# Sent once per script run, before any fragment: a fragment's rerun would drop and re-add it, and the sizes jump.
PAGE_STYLE = """<style>
[data-testid="stMetricValue"] {font-size: 1.45rem;}  /* six figures fit one row */
[data-testid="stMainBlockContainer"] {padding-top: 3.5rem;}  /* under the page links, not a screen's third below */
.st-key-share_link pre::before {content: ""; float: right; width: 2rem; height: 1.4em;}  /* room for the copy button */
.st-key-share_link code {font-size: 0.8rem;}  /* most links break once, after their address */
</style>"""


def pages() -> dict[str, st.Page]:
    """The pages by name; the run page is the default, at the app's root, so ?run=NAME opens a run as always."""
    return {
        "run": st.Page(run_page, title="Run", icon=":material/monitoring:", url_path="run", default=True),
        "overview": st.Page(overview_page, title="Overview", icon=":material/table_rows:", url_path="overview"),
        "compare": st.Page(compare_page, title="Compare", icon=":material/compare_arrows:", url_path="compare"),
        "new": st.Page(new_run_page, title="New run", icon=":material/add_circle:", url_path="new"),
    }


def main() -> None:
    """The entry point of `streamlit run app.py`: the page style, who may steer, the navigation, then the page asked
    for."""
    st.set_page_config(page_title=TITLE, layout="wide")
    st.html(PAGE_STYLE)
    widgets.announce_access()  # on the server's first page load the credential is made, and the console says so
    widgets.sign_in_from_link()
    widgets.warn_if_open()
    registered = pages()
    widgets.register_pages(registered)
    page = st.navigation(list(registered.values()), position="top")
    if page.url_path:  # not the run page, the default, at the root
        run_controls.drop_presses()  # a run's control pressed just before leaving it: not done on return
    page.run()
