"""PACS bridge: finds chest X-rays (the selected modalities) in a PACS, segments them with the service, stores SEG and SC back."""
