"""The gallery: enrolled identities, their encrypted templates, and the index that searches them."""
