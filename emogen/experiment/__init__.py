"""The experiment: speaker-grouped K-fold augmentation study, its typed results and its report."""
