"""Loading: user files in, validated arrays out (mesh formats, view folders, photos, folder scan)."""
