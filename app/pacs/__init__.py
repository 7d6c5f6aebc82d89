"""PACS bridge: finds CR/DX X-rays in Orthanc, segments them with the service, stores SEG and SC back."""
