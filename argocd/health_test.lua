-- Runs an Argo CD health script on an object read from a JSON file, the way Argo CD does, and
-- prints the result as two lines: the status, then the message.
--
--   lua5.4 argocd/health_test.lua argocd/health.lua argocd/testdata/healthy.json
--
-- Needs Debian's lua5.4 and lua-dkjson (apt-get install lua5.4 lua-dkjson). Like Argo CD, the
-- script sees the object as the global `obj` and only Lua's base and table libraries: `string`,
-- `math`, `io` and string methods are hidden, so a script that passes here does not call what
-- Argo CD's sandbox leaves out.
local script, input = arg[1], arg[2]
if script == nil or input == nil then
  io.stderr:write("usage: lua5.4 health_test.lua HEALTH.lua OBJECT.json\n")
  os.exit(2)
end

local found, json = pcall(require, "dkjson")
if not found then
  io.stderr:write("the JSON library is missing: apt-get install lua5.4 lua-dkjson\n")
  os.exit(3)
end

local file = assert(io.open(input, "r"))
local text = file:read("a")
file:close()
local object, _, err = json.decode(text)
if object == nil then
  io.stderr:write(input .. ": " .. tostring(err) .. "\n")
  os.exit(1)
end

-- What Argo CD opens for a health script from argocd-cm (base and table; `os` is a reduced one).
local env = { obj = object, table = table }
for _, name in ipairs({ "assert", "error", "ipairs", "next", "pairs", "pcall", "rawequal", "rawget",
  "rawset", "select", "setmetatable", "getmetatable", "tonumber", "tostring", "type", "xpcall" }) do
  env[name] = _G[name]
end
env._G = env

local chunk, loadErr = loadfile(script, "t", env)
if chunk == nil then
  io.stderr:write(loadErr .. "\n")
  os.exit(1)
end
local strings = getmetatable("")
local stringIndex = strings.__index
strings.__index = nil -- no ("x"):len() either
local ok, hs = pcall(chunk)
strings.__index = stringIndex
if not ok then
  io.stderr:write(script .. " failed: " .. tostring(hs) .. "\n")
  os.exit(1)
end

local valid = { Healthy = true, Progressing = true, Degraded = true, Suspended = true, Missing = true, Unknown = true }
if type(hs) ~= "table" or not valid[hs.status] then
  io.stderr:write(script .. " returned no valid hs.status (Argo CD would show Unknown)\n")
  os.exit(1)
end
print(hs.status)
print(hs.message or "")
