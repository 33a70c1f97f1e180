"""Mode probing: the judge (pure), the stage runners and the controller that owns the mode in use."""
