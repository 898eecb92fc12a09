"""The files a run is made of and the names they use: the layer every other one stands on."""
