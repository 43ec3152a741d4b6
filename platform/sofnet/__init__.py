"""SoF-Net library."""
