"""The DICOM node: a Storage SCP that segments the chest X-rays it receives and sends the results
on by C-STORE and/or STOW-RS, through a spool that survives restarts."""
