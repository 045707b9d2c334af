-- wrk script: HTTP/1.1 pipelining. Each write carries DEPTH GET requests for
-- the URL's path (default 16); wrk counts every response.
--   wrk -s bench/lua/pipeline.lua http://127.0.0.1:PORT/ -- 16
local req

init = function(args)
  local depth = tonumber(args[1]) or 16
  local r = {}
  for i = 1, depth do
    r[i] = wrk.format()
  end
  req = table.concat(r)
end

request = function()
  return req
end
