-- Argo CD health check for appserver.dev/AppServer, read from the conditions the operator
-- writes (docs/api.md). Argo CD runs it in Lua 5.1 (gopher-lua) with only the base and table
-- libraries: no string or math functions here. docs/gitops.md explains the states.
local hs = {}

local function condition(type)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function say(c)
  if c.message == nil or c.message == "" then
    return c.reason or ""
  end
  return c.message
end

local generation = obj.metadata.generation or 0
local ready = condition("Ready")
local degraded = condition("Degraded")
local progressing = condition("Progressing")

if obj.status == nil or (obj.status.observedGeneration or 0) < generation
    or (ready ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. generation
elseif degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = (degraded.reason or "Degraded") .. ": " .. say(degraded)
elseif ready ~= nil and ready.status == "True" then
  if obj.spec.tuning ~= nil and obj.spec.tuning.mode == "recommend" then
    hs.status = "Suspended"
    hs.message = "recommend-only: the tuner recommends and applies nothing ("
      .. say(ready) .. ")"
  else
    hs.status = "Healthy"
    hs.message = say(ready)
  end
elseif progressing ~= nil and progressing.status == "True" then
  hs.status = "Progressing"
  hs.message = say(progressing)
elseif ready ~= nil and ready.status == "Unknown" then
  hs.status = "Unknown"
  hs.message = say(ready)
elseif ready ~= nil then
  hs.status = "Progressing"
  hs.message = say(ready)
else
  hs.status = "Progressing"
  hs.message = "waiting for the operator to report a Ready condition"
end
return hs
