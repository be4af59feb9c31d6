"""Starting tritonserver and rendering its model repository."""
