"""The Streamlit app: a frame (style, navigation, sign-in) and pages that never import each other."""
