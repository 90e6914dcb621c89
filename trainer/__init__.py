"""Train a brain-MRI tumor screening CNN and export a versioned artifact."""
