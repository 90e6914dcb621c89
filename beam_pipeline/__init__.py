"""Screen brain-MRI image archives with a trained model on Apache Beam."""
