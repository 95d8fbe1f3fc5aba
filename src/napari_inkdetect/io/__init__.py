"""Reading and writing what users have on disk: surface volumes, masks and labels."""
