-- Orthanc routes every CR/DX image it stores to the covidseg DICOM node (C-STORE).
-- The node applies its own selection rules (chest, PA/AP, for presentation) and sends the
-- SEG, SC and SR back to Orthanc; those are not CR/DX, so they are never routed again.
-- The modality "covidseg" is declared in Orthanc's DicomModalities (see docker-compose.yml).

function OnStoredInstance(instanceId, tags, metadata, origin)
   local modality = tags['Modality']
   if modality == 'CR' or modality == 'DX' then
      SendToModality(instanceId, 'covidseg')
   end
end
