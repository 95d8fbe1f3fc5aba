"""napari docks: thin Qt adapters that map widget values to engine calls and layer updates."""
