-- Argo CD health check for modelship.dev/ModelService (docs/gitops.md).
-- Reads the conditions the operator writes; the Ready message says what serves, the
-- Degraded message what needs attention. Tested against real status objects in
-- tests/operator/test_gitops_health.py.
local hs = {status = "Progressing", message = "waiting for the modelship operator to report status"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.message = "waiting for the modelship operator to observe generation " .. tostring(generation)
  return hs
end
local by_type = {}
for _, condition in ipairs(obj.status.conditions) do
  by_type[condition.type] = condition
end
local ready, progressing, degraded = by_type["Ready"], by_type["Progressing"], by_type["Degraded"]
local moving = progressing ~= nil and progressing.status == "True"
if degraded ~= nil and degraded.status == "True" and not moving then
  hs.status = "Degraded"
  hs.message = (degraded.reason or "") .. ": " .. (degraded.message or "")
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or ""
  return hs
end
if ready ~= nil then
  hs.message = (ready.reason or "") .. ": " .. (ready.message or "")
end
return hs
