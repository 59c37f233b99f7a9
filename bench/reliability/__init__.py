"""The long-run reliability campaign (see __main__)."""
