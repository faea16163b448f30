"""ehealthlab: the platform of the E-health Territorial LAB (Metropolitan City of Turin)."""

__version__ = "0.1.0"
