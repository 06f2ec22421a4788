"""napari plugin for migradetect."""
